{{/* Names: "<release>-<chart>" unless the release name already contains the chart name. */}}
{{- define "slimserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "slimserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "slimserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (selectors are immutable), so no version in them. */}}
{{- define "slimserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slimserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "slimserve.labels" -}}
{{ include "slimserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: slimserve
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "slimserve.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "slimserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "slimserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image as the operator configuration wants it: {repository, tag, pullPolicy}; a digest goes in the tag
(the operator writes "repository@sha256:..." for a tag that starts with "sha256:").
Call with (dict "image" .Values.images.server "suffix" "" "root" $).
*/}}
{{- define "slimserve.configImage" -}}
repository: {{ .image.repository }}
tag: {{ include "slimserve.imageTag" . | quote }}
pullPolicy: {{ .root.Values.images.pullPolicy }}
{{- end -}}

{{- define "slimserve.imageTag" -}}
{{- if .image.digest -}}
{{- .image.digest -}}
{{- else -}}
{{- default (printf "%s%s" .root.Chart.AppVersion .suffix) .image.tag -}}
{{- end -}}
{{- end -}}

{{/* A full image reference, "repository:tag" or "repository@sha256:...". */}}
{{- define "slimserve.imageRef" -}}
{{- $tag := include "slimserve.imageTag" . -}}
{{- if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The compression and server pods' security context for the operator's configuration. An id unset in the values
(null there removes the key) is written as null: the configuration's own default is the fixed id.
*/}}
{{- define "slimserve.workloadPodSecurityContext" -}}
{{- $context := deepCopy .Values.workloads.podSecurityContext -}}
{{- range $id := list "runAsUser" "runAsGroup" "fsGroup" -}}
{{- if not (hasKey $context $id) -}}
{{- $_ := set $context $id nil -}}
{{- end -}}
{{- end -}}
{{- toJson $context -}}
{{- end -}}

{{/* Peering is per watched namespace in namespaced mode, one cluster object otherwise. */}}
{{- define "slimserve.namespaced" -}}
{{- if .Values.operator.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/* The labels every ModelService's server pods carry (slimserve.controller.labels, component server). */}}
{{- define "slimserve.serverSelectorLabels" -}}
app.kubernetes.io/name: slimserve
app.kubernetes.io/component: server
app.kubernetes.io/managed-by: slimserve-operator
{{- end }}
