"""Reports and replies matched with the messages that were sent; each message's delivery state."""
