"""The control plane of `orchestrate`: sweep files in, plans out, runs on Ray, results back."""
