"""The device's hardware: board profiles, gpiozero devices, desk-phone and intercom behaviour."""
