"""The supernode: STUN and TURN for clients, the presence overlay, rendezvous, promotion."""
