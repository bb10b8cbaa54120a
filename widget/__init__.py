"""Status bullets for MOR's device pages: a small read-only Flask app."""
