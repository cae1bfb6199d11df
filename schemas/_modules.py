"""Domain modules holding payload contracts (generated list)."""

MODULES = (
    "assets",
    "billing",
    "crm",
    "documents",
    "email",
    "integrations",
    "legacy",
    "media",
    "notifications",
    "projects",
    "scheduling",
    "surveys",
    "tickets",
)
