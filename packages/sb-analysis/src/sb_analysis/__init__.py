"""SwitchBank run analysis."""
