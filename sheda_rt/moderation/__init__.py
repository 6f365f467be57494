"""Reports of messages, users and listings, and the moderators' queue that handles them."""
