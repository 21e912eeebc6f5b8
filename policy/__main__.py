"""The model-stack policy pack: `pulumi preview --policy-pack policy --policy-pack-config policy/config/<stack>.json`."""
from pulumi_policy import EnforcementLevel, PolicyPack

from model_stack_policy.rules import POLICIES

# Advisory unless a stack's policy config says otherwise (policy/config/prod.json makes everything mandatory).
PolicyPack("model-stack", policies=POLICIES, enforcement_level=EnforcementLevel.ADVISORY)
