"""The persona run end to end: `run` / `find` / `steer` as plain functions and their stages (situations, the
steering sweep, specificity, dashboards attached to a run, the AI-entity reading on ordinary chats, `plan=true`)."""
