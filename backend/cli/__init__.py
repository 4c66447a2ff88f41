"""The `maskloop` command line: serve, migrate, users, projects, import, demo-data, jobs, gc, fsck, backup, erase.

A thin shell over the flows (`backend/flows/`): each command parses its options, calls one use case and prints the
outcome. The commands live in one module per group; they are registered here, in the order `--help` lists them.
"""

from __future__ import annotations

import typer

from backend.cli import accounts, backup, data, jobs, server, storage
from backend.cli import models as model_cli
from backend.cli import pacs as pacs_cli
from backend.flows.demo import DEMO_PASSWORD

__all__ = ["DEMO_PASSWORD", "app"]

app = typer.Typer(help="maskloop: collaborative CT segmentation platform.", no_args_is_help=True)

app.command()(server.migrate)
app.command()(server.serve)
app.command("worker")(server.run_worker)
app.command("create-user")(accounts.create_user)
app.command("create-project")(accounts.create_project)
app.command("import")(data.import_data)
app.command("import-labels")(data.import_labels)
app.command("demo-data")(data.demo_data)
app.command()(jobs.preannotate)
app.command()(jobs.train)
app.command("jobs")(jobs.list_jobs)
app.command("export")(jobs.export_dataset)
app.command("evaluate")(jobs.evaluate)
app.command("register-model")(model_cli.register_model)
app.command("promote")(model_cli.promote)
app.command("attention")(model_cli.attention)
app.command("gc")(storage.gc)
app.command("fsck")(storage.fsck)
app.command("backup")(backup.backup)
app.command("restore")(backup.restore)
app.command("erase")(backup.erase)
app.add_typer(pacs_cli.app, name="pacs")
