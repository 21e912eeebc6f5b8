"""Resource options shared by the components."""

from typing import Optional

import pulumi


def child_options(component: pulumi.ComponentResource, opts: Optional[pulumi.ResourceOptions]) -> pulumi.ResourceOptions:
    """Options for a component's children: parented to it, and waiting for what the component was told to wait
    for (Pulumi does not pass a component's `depends_on` on to its children)."""
    return pulumi.ResourceOptions(parent=component, depends_on=opts.depends_on if opts else None)
