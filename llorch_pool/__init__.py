"""Pool manager: one per host. Reports devices, models and workers; spawns and stops workers
on the orchestrator's command. Decides nothing."""
