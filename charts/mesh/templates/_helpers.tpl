{{/*
Names, labels and the value checks shared by every template.
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "mesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/*
The fully qualified name: the StatefulSet, the gateway Service and the prefix of every other object.
Capped at 52 characters, not 63: a StatefulSet's pods carry a controller-revision-hash label of
"<name>-<10 character hash>", which must itself fit in 63, and "<name>-peers" must be a DNS label.
*/}}
{{- define "mesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* "name-version", as the helm.sh/chart label wants it. */}}
{{- define "mesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The labels that select this release's mesh pods. Never change them: selectors are immutable. */}}
{{- define "mesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels on every object. Components: node, gateway, peers, config, ... */}}
{{- define "mesh.labels" -}}
helm.sh/chart: {{ include "mesh.chart" . }}
{{ include "mesh.selectorLabels" . }}
app.kubernetes.io/version: {{ include "mesh.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dark-store-mesh
{{- end }}

{{/* The image tag: image.tag, else the chart's appVersion. */}}
{{- define "mesh.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is pinned. */}}
{{- define "mesh.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "mesh.imageTag" .) -}}
{{- end -}}
{{- end }}

{{/* The headless Service that gives every pod its stable peer name. */}}
{{- define "mesh.peerServiceName" -}}
{{- printf "%s-peers" (include "mesh.fullname" .) -}}
{{- end }}

{{- define "mesh.configMapName" -}}
{{- printf "%s-config" (include "mesh.fullname" .) -}}
{{- end }}

{{- define "mesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{/* Created by `mesh-ctl` outside the chart: see README.md, "Secrets and the layout". */}}
{{- define "mesh.caSecretName" -}}
{{- default (printf "%s-ca" (include "mesh.fullname" .)) .Values.secrets.caSecretName -}}
{{- end }}

{{/* Node N's Secrets are "<prefix>N-tls" and "<prefix>N-kek". */}}
{{- define "mesh.nodeSecretPrefix" -}}
{{- default (printf "%s-node-" (include "mesh.fullname" .)) .Values.secrets.nodeSecretPrefix -}}
{{- end }}

{{- define "mesh.layoutConfigMapName" -}}
{{- default (printf "%s-layout" (include "mesh.fullname" .)) .Values.layout.configMapName -}}
{{- end }}

{{/* The DNS suffix of every pod's stable name: <pod>.<this>. */}}
{{- define "mesh.peerDomain" -}}
{{- printf "%s.%s.svc.%s" (include "mesh.peerServiceName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end }}

{{/* Where the node's files live inside the container. */}}
{{- define "mesh.paths.config" -}}/etc/dsm/config{{- end }}
{{- define "mesh.paths.ca" -}}/etc/dsm/ca{{- end }}
{{- define "mesh.paths.node" -}}/etc/dsm/node{{- end }}
{{- define "mesh.paths.layout" -}}/etc/dsm/layout{{- end }}
{{- define "mesh.paths.data" -}}/var/lib/dsm{{- end }}

{{/*
What values.schema.json cannot say: relations between values and the shape of the names.
Rendered from the StatefulSet, so `helm template`, `helm lint` and `helm install` all stop here.
*/}}
{{- define "mesh.validateValues" -}}
{{- $fullname := include "mesh.fullname" . -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $fullname) -}}
{{- fail (printf "the release name makes the fullname %q, which is not a DNS label (lowercase letters, digits and '-'): pod names are node ids and peer DNS names; set fullnameOverride" $fullname) -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) (int .Values.maxNodes) -}}
{{- fail (printf "replicaCount (%d) is larger than maxNodes (%d): the pod template mounts node Secrets for ordinals 0..maxNodes-1 only; raise maxNodes (a rolling restart) and issue the new nodes' Secrets first" (int .Values.replicaCount) (int .Values.maxNodes)) -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- if gt (int .Values.autoscaling.maxReplicas) (int .Values.maxNodes) -}}
{{- fail (printf "autoscaling.maxReplicas (%d) is larger than maxNodes (%d): every pod the autoscaler may add needs its node Secrets mounted; raise maxNodes" (int .Values.autoscaling.maxReplicas) (int .Values.maxNodes)) -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas (%d) is larger than autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.layout.enabled) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "layout.enabled=false runs every node standalone (each would accept every customer): only allowed with replicaCount=1 and autoscaling off; create the layout ConfigMap with mesh-ctl instead" -}}
{{- end -}}
{{- $ports := list (int .Values.ports.gateway) (int .Values.ports.ops) (int .Values.ports.peer) -}}
{{- if ne (len (uniq $ports)) 3 -}}
{{- fail (printf "ports.gateway, ports.ops and ports.peer must differ (got %v)" $ports) -}}
{{- end -}}
{{- end }}
