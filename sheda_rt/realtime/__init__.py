"""The real-time hub: who has which sockets open, and the one way events reach them."""
