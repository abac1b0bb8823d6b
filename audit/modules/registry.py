"""The report's sections, in the order they run (the one list the pipeline and the figure worker read)."""

from __future__ import annotations

from audit.modules.base import AuditModule


def default_modules() -> list[AuditModule]:
    """The modules in the order they run; each is imported here, only when a run gets this far."""
    from audit.modules.comparison import ComparisonModule
    from audit.modules.fairness import FairnessModule
    from audit.modules.global_explain import AleModule, InteractionModule, PartialDependenceModule, PermutationModule
    from audit.modules.local_explain import CounterfactualModule, LimeModule, ShapModule
    from audit.modules.monitoring import DataQualityModule, DriftModule
    from audit.modules.network import ActivationsModule, ArchitectureModule, GradientsModule, UncertaintyModule
    from audit.modules.performance import PerformanceModule
    from audit.modules.robustness import ContrastiveModule, FaithfulnessModule, StabilityModule, WeakSegmentsModule

    return [
        DataQualityModule(),
        DriftModule(),
        PerformanceModule(),
        PermutationModule(),
        FairnessModule(),  # before the local explanations: reason codes that cite a flagged proxy are marked
        PartialDependenceModule(),
        AleModule(),
        InteractionModule(),
        ShapModule(),
        LimeModule(),
        CounterfactualModule(),
        ContrastiveModule(),
        WeakSegmentsModule(),
        StabilityModule(),
        ArchitectureModule(),
        GradientsModule(),
        ActivationsModule(),
        UncertaintyModule(),
        FaithfulnessModule(),  # after SHAP, LIME and the gradients: it checks their attributions
        ComparisonModule(),
    ]
