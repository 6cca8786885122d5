"""One APIRouter per area of the API: score, recommend, events, admin, health."""
