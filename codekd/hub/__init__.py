"""Files that codekd copies into every run directory, so that plain `transformers` reproduces codekd's
preprocessing there (`pipeline("text-classification", model=DIR, trust_remote_code=True)`).

They import nothing from codekd: `codekd_text` is the input preparation that codekd itself runs (one
implementation for both), `codekd_pipeline` the text-classification pipeline registered in each
directory's `config.json` (`custom_pipelines`).
"""
