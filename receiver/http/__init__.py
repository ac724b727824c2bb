"""HTTP: routes and responses only; the work happens in the modules they call."""
