"""What pollbench writes and keeps: run folders, run.json, sweep manifests, their schemas."""
