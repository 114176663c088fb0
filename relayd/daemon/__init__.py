"""The daemon side: lifecycle, runner and drains, results, retries, notices, the instance lock."""
