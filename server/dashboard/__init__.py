"""The operator's page: a read-only web view of runs, sites and privacy spend (``implantfl-server dashboard``)."""
