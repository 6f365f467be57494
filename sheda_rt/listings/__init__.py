"""Property listings: the store (queries and indexes), the search planner, and the rules."""
