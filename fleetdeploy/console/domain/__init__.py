"""The domain layer: every decision and every write of the console (console.Console brings together auth,
admin, launch, reads and alerts). It calls the runner to run playbooks; it never imports the web."""
