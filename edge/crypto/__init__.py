"""Keys, certificates, the Noise Protocol Framework and its transports."""
