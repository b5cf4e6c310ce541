"""What people read: result cards, dashboards pages and the cross-card tables, rendered from saved numbers."""
