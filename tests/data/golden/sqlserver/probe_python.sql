-- tdsp-deploy: probe_python
EXEC sp_execute_external_script
    @language = N'Python',
    @script = N'# tdsp-deploy probe: the server''s Python and the versions of the libraries asked for.
import sys
import importlib.metadata
import pandas
rows = [("python", sys.version.split()[0])]
for name in [part.strip() for part in libraries.split(",") if part.strip()]:
    try:
        rows.append((name, importlib.metadata.version(name)))
    except importlib.metadata.PackageNotFoundError:
        rows.append((name, None))
OutputDataSet = pandas.DataFrame(rows, columns=["name", "version"])
',
    @params = N'@libraries nvarchar(max)',
    @libraries = ?;
