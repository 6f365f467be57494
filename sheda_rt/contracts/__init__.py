"""From a confirmed viewing to an active rent or sale contract, and its expiry."""
