"""The stages that run inside the pods: data generation, training and evaluation (no Kubernetes access)."""
