"""The shell: everything that talks to the API server (reads, watches, writes, the Lease)."""
