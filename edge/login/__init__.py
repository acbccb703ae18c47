"""The login server: accounts, certificates, buddy lists, mailbox, relay credentials."""
