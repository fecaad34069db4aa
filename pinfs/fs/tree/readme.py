"""The text of the mount's ``README`` (CONTRACT §2): what is where, and how to drive the control files.

One constant in one module; its control section is generated from the command declarations.
"""

from pinfs.commands import control_readme

README_TEXT = (
    """\
pinfs: IPFS pin mappings of the data root, one directory per storage backend.

  health.json  status.json  insights.json   reports over every backend
  insights.svg                              insights.json drawn: open it in a browser
  backends/<b>/summary.json                 count, counts by status, source (parquet/legacy)
  backends/<b>/pin_mappings.parquet         the file itself (pandas.read_parquet works on it), an
                                            export of the backend's Delta table
  backends/<b>/pin_mappings.car             the file itself (a CARv1 file)
  backends/<b>/pin_mappings.car.json        the CAR's content as JSON (json.load works on it)
  backends/<b>/by-cid/<cid>/                cid status car_file_path backend_name created_at
                                            metadata.json pin.json
  backends/<b>/by-status/<status>/<cid>     symlinks to ../../by-cid/<cid>
  cids/<cid>/<b>                            one symlink per backend holding the CID

"""
    + control_readme()
    + """\
The command runs once, on everything written, at the last close of the open file: when the
process that opened it and every process that inherited it have closed it, so
( cat a; cat b ) > backends/<b>/.control/pin is one batch of both. That close returns when the
command has finished, and fails with EIO when it failed: /bin/echo run by bash reports it. A shell
that opens the file itself and keeps it open around a command (dash: sh -c '/bin/echo x > f';
any shell's built-in echo) makes the last close its own, and ignores errors at close: check "state"
in the file's JSON, which is final when the shell returns. A bad word or CID, or a line over 4 KiB,
fails the write (EINVAL) and nothing of that open file runs; the file's JSON then says "state":
"rejected" and why, in "error" (a bad last line without a newline is only found at close, which
bash's printf does not check: read the JSON). '>>' and 'tee -a' work like '>'. Reading a control
file gives JSON about its last run.
Any spelling of a CID finds it: by-cid/<cid> and cids/<cid> take Qm... or bafy..., in any case.
Mounted with --sync-interval / --verify-interval (e.g. 15m, 1d), the mount also runs sync and
verify on that schedule; health.json and status.json show their last runs. CIDs containing "/" (base64 multibase)
cannot be file names and are left out of listings.
"""
)
