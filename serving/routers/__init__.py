"""One router per resource: picks, similar products, audiences, events, model admin, health."""
