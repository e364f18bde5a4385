"""User interfaces over the API: the terminal wizard (bare `tunesmith`)."""
