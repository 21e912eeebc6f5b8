"""Pulumi entry point: validate this stack's config, then compose its resources."""
from stacks import deploy

deploy()
