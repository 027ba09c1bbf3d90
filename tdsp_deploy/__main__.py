from tdsp_deploy.cli.console import run

run()
