#!/bin/sh
# One-shot bootstrap job of docker-compose.yml (runs in the ranker image as `whisperlite-bootstrap`):
# prepare the dataset, train the personalization model or keep the one already there, ingest the catalog.
# Every step is skipped when its result exists, so re-running `docker compose up` is cheap.
#
#   WHISPERLITE_DATASET   dataset name under /datasets (raw files in /datasets/NAME/raw)  [amazon_clothing_2014_msl]
#   WHISPERLITE_TRAIN     if-missing | always | never                                      [if-missing]
#   WHISPERLITE_INGEST    missing | if-empty | always | never                              [missing]
#   CATALOG_ADDR          catalog address                                                  [catalog:50052]
#   DATASETS_DIR, DATA_DIR, MODELS_DIR                                                     [/datasets, /data, /models]
set -eu

dataset=${WHISPERLITE_DATASET:-amazon_clothing_2014_msl}
train=${WHISPERLITE_TRAIN:-if-missing}
ingest=${WHISPERLITE_INGEST:-missing}
catalog=${CATALOG_ADDR:-catalog:50052}
raw=${DATASETS_DIR:-/datasets}/$dataset/raw
data=${DATA_DIR:-/data}/$dataset
models=${MODELS_DIR:-/models}

log() { echo "bootstrap: $*"; }

if [ -f "$data/items.csv" ] && [ -f "$data/dataset.json" ]; then
  log "prepared data present in $data"
else
  [ -d "$raw" ] || { echo "bootstrap: $raw not found: mount the datasets folder at ${DATASETS_DIR:-/datasets} (WHISPERLITE_DATASETS)" >&2; exit 1; }
  log "preparing $dataset from $raw"
  whisperlite data prepare --source "$dataset" --raw "$raw" --out "$data"
fi

existing_model=$(ls -d "$models/$dataset"-*/manifest.json 2>/dev/null | tail -n 1 || true)
case $train in
  always) log "training a new model"; whisperlite train --data "$data" --out "$models" ;;
  if-missing)
    if [ -n "$existing_model" ]; then log "model present: $(dirname "$existing_model") (the ranker loads the newest)"
    else log "no model for $dataset yet: training"; whisperlite train --data "$data" --out "$models"; fi ;;
  never) log "training disabled: the ranker serves ${existing_model:+the model in $models}${existing_model:-text-only results}" ;;
  *) echo "bootstrap: WHISPERLITE_TRAIN must be if-missing, always or never, got '$train'" >&2; exit 2 ;;
esac

case $ingest in
  always) whisperlite ingest --data "$data" --catalog "$catalog" ;;
  # The items the catalog lacks: all of them into an empty catalog, the rest of a job stopped midway.
  missing) whisperlite ingest --data "$data" --catalog "$catalog" --missing-only ;;
  if-empty)
    count=$(python -c 'import sys; from whisperlite.core.client_security import ClientSecurity; from whisperlite.shell.up import catalog_item_count; print(catalog_item_count(sys.argv[1], ClientSecurity.from_env()))' "$catalog")
    if [ "$count" -eq 0 ]; then whisperlite ingest --data "$data" --catalog "$catalog"
    else log "catalog at $catalog already holds $count items: not ingesting (WHISPERLITE_INGEST=always re-upserts)"; fi ;;
  never) log "ingestion disabled" ;;
  *) echo "bootstrap: WHISPERLITE_INGEST must be missing, if-empty, always or never, got '$ingest'" >&2; exit 2 ;;
esac
log "done"
