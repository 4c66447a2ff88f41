"""Use cases that span domains: each flow calls the services and owns the transaction (it ends with one commit)."""
