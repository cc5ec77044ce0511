{{/* Names and labels shared by every template. */}}

{{- define "dspool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: fullnameOverride, else "<release>-<name>", or the release name alone when it
already contains the name (name: nameOverride or "dspool"). */}}
{{- define "dspool.fullname" -}}
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

{{- define "dspool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dspool.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dspool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dspool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dspool.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "dspool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "dspool.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The namespaced write rules: needed in every watched namespace, or cluster-wide when none is set. */}}
{{- define "dspool.namespacedWriteRules" -}}
# Status is where dspool records every decision; its placements are the device reservations.
- apiGroups: ["dspool.io"]
  resources: ["deepseekdeployments/status"]
  verbs: ["patch"]
# The workloads carry owner references with blockOwnerDeletion (deleting a DSD deletes them); setting
# that needs update on the owner's finalizers subresource. dspool adds no finalizers itself.
- apiGroups: ["dspool.io"]
  resources: ["deepseekdeployments/finalizers"]
  verbs: ["update"]
# The serving workloads dspool builds: a Deployment per single-node replica, StatefulSets per multi-node
# replica when LeaderWorkerSet is not installed. Server-side apply creates or patches them; list (once per
# kind when the operator takes the Lease, by dspool's label) finds those an earlier operator left, delete
# removes the ones a decision no longer wants.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["list", "create", "patch", "delete"]
# The Service endpoint of each DSD and the headless Services of multi-node replicas; ConfigMaps hold
# engine configuration (MindIE's config.json, the HCCL rank table).
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["list", "create", "patch", "delete"]
# Multi-node replicas when LeaderWorkerSet is installed (one LeaderWorkerSet per replica).
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets"]
  verbs: ["list", "create", "patch", "delete"]
# The node model cache: a fetch Job per (checkpoint, node), in the namespace of the DSD that wants it (beside
# its credentials Secret), and evict Jobs. The Jobs are the cache's record (read cluster-wide, see -read).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "patch", "delete"]
# Events on DSDs ("Placed", "Unschedulable", "ReplicaLost") for `kubectl describe dsd`.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
