"""MongoDB access: the embedded database launcher, the client, and the id allocator."""
