"""The model card: the facts about the model that the config's ``report.model_card`` gives, in a fixed order."""

from __future__ import annotations


def model_card_fields(cfg) -> list[tuple[str, str]]:
    """(label, text) for every model-card field the config fills, in a fixed order."""
    card = cfg.report.model_card
    labels = {
        "model_name": "Model",
        "owner": "Owner",
        "version": "Version",
        "intended_use": "Intended use",
        "out_of_scope_use": "Out-of-scope use",
        "training_data": "Training data",
        "limitations": "Limitations",
        "ethical_considerations": "Ethical considerations",
        "contact": "Contact",
    }
    out = [(label, getattr(card, key)) for key, label in labels.items() if getattr(card, key)]
    return out + list(card.extra.items())
