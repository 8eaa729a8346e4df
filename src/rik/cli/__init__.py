"""rikctl: the command line for RIK."""
