"""Serves the model-stack components to Pulumi programs in any language (`pulumi package add`)."""

from pulumi.provider.experimental import component_provider_host

from model_stack_components.plugin import COMPONENTS, PACKAGE_NAME

if __name__ == "__main__":
    component_provider_host(COMPONENTS, PACKAGE_NAME)
