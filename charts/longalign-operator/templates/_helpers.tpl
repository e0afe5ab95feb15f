{{/* The chart's name, or nameOverride. */}}
{{- define "longalign-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name: fullnameOverride, or the release name (with the chart's name added
unless the release name contains it). Cluster-scoped objects carry it too, so releases never collide. */}}
{{- define "longalign-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "longalign-operator.instanceLabels" -}}
app.kubernetes.io/name: {{ include "longalign-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's pods (and only they: the uninstall hook waits for them to be gone). */}}
{{- define "longalign-operator.selectorLabels" -}}
{{ include "longalign-operator.instanceLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "longalign-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "longalign-operator.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "longalign-operator.serviceAccountName" -}}
{{- default (include "longalign-operator.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "longalign-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespaces whose runs the operator watches in namespace scope (default: the release's). */}}
{{- define "longalign-operator.watchNamespaces" -}}
{{- default (list .Release.Namespace) .Values.rbac.namespaces | toJson }}
{{- end }}

{{/* The operator's rights. Exactly the rules of manifests/rbac/operator.yaml (a test compares them). */}}
{{- define "longalign-operator.rules" -}}
- apiGroups: [longalign.dev]
  resources: [longalignruns]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [longalign.dev]
  resources: [longalignruns/status]
  verbs: [get, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, watch]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, watch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
Rules granted to a ServiceAccount over the runs' namespaces: a ClusterRole and ClusterRoleBinding in cluster
scope, a Role and RoleBinding in each watched namespace in namespace scope.
Arguments (a dict): root (the chart's context), name, serviceAccount, rules (YAML), annotations (a dict).
*/}}
{{- define "longalign-operator.scopedGrant" -}}
{{- $root := .root }}
{{- $namespaces := list "" }}
{{- $kind := "ClusterRole" }}
{{- if eq $root.Values.rbac.scope "namespace" }}
{{- $namespaces = include "longalign-operator.watchNamespaces" $root | fromJsonArray }}
{{- $kind = "Role" }}
{{- end }}
{{- range $namespaces }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ $kind }}
metadata:
  name: {{ $.name }}
  {{- with . }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "longalign-operator.labels" $root | nindent 4 }}
  {{- with $.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
rules:
{{ $.rules }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ $kind }}Binding
metadata:
  name: {{ $.name }}
  {{- with . }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "longalign-operator.labels" $root | nindent 4 }}
  {{- with $.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ $kind }}
  name: {{ $.name }}
subjects:
- kind: ServiceAccount
  name: {{ $.serviceAccount }}
  namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- end }}

{{/* The pod and container security settings of every pod of the chart (the operator and the hook). */}}
{{- define "longalign-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "longalign-operator.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}
