"""Running at scale: connecting to or starting Ray, and the cluster manifests beside this file."""
