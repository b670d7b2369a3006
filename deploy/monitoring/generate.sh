#!/usr/bin/env bash
# Writes prometheusrule.yaml from rules.yml: the same groups, as the
# prometheus-operator's PrometheusRule. Run after changing rules.yml; the
# test services/custodian/tests/monitoring.rs fails while they differ.
set -euo pipefail
cd "$(dirname "$0")"
{
  cat <<'HEADER'
# Generated from rules.yml by generate.sh: edit rules.yml, then run it.
# For the prometheus-operator; its ruleSelector must match these labels
# (kube-prometheus-stack's default selects `release: <its release name>`:
# add that label here, or set ruleSelectorNilUsesHelmValues=false).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: custodian
  labels:
    app.kubernetes.io/part-of: custodian
spec:
HEADER
  grep -v '^#' rules.yml | sed 's/^/  /; s/^  $//'
} > prometheusrule.yaml
