"""The event feed: reports, state changes, replies and opt-outs, in commit order, for downstream services."""
