from whisperkv.reference.app.cli import run

run()
