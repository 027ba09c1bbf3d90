from tdsp_deploy.cli import run

run()
