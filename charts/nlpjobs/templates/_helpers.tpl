{{/*
Chart name.
*/}}
{{- define "nlpjobs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name (63 characters at most: a DNS label).
*/}}
{{- define "nlpjobs.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "nlpjobs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "nlpjobs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nlpjobs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "nlpjobs.labels" -}}
helm.sh/chart: {{ include "nlpjobs.chart" . }}
{{ include "nlpjobs.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nlpjobs
nlpjobs.io/task: {{ .Values.task }}
nlpjobs.io/run: {{ include "nlpjobs.runName" . }}
{{- end }}

{{/*
Name of a stage's resources: <fullname, at most 45 characters>-<stage>. Keeps the Indexed Job's pod
hostnames (<job>-<index>) within a 63-character DNS label.
Usage: include "nlpjobs.stageName" (list $ "train")
*/}}
{{- define "nlpjobs.stageName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "nlpjobs.fullname" $root | trunc 45 | trimSuffix "-") (index . 1) }}
{{- end }}

{{/*
Run id: values.runName, else the release name.
*/}}
{{- define "nlpjobs.runName" -}}
{{- default .Release.Name .Values.runName }}
{{- end }}

{{/*
Storage root URI: s3://<bucket>/<prefix or task>.
*/}}
{{- define "nlpjobs.storageRoot" -}}
{{- $prefix := default .Values.task .Values.storage.prefix | trimAll "/" }}
{{- printf "s3://%s/%s" .Values.storage.bucket $prefix }}
{{- end }}

{{/*
Job file inside the image.
*/}}
{{- define "nlpjobs.jobFile" -}}
{{- if .Values.jobFile }}
{{- .Values.jobFile }}
{{- else if eq .Values.preset "local" }}
{{- printf "/app/jobs/local/%s.yaml" .Values.task }}
{{- else }}
{{- printf "/app/jobs/%s.yaml" .Values.task }}
{{- end }}
{{- end }}

{{/*
Container image reference.
*/}}
{{- define "nlpjobs.image" -}}
{{- $repo := tpl .Values.image.repository . }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- $flavour := ternary "cuda" "cpu" .Values.gpu.enabled }}
{{- $tag := tpl (default (printf "%s-%s" .Chart.AppVersion $flavour) .Values.image.tag) . }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{/*
Arguments every stage (and every wait) gets after the subcommand: the job file, the storage root, the
run id and the user's overrides. Rendered as YAML list items.
*/}}
{{- define "nlpjobs.commonArgs" -}}
- "-c"
- {{ include "nlpjobs.jobFile" . | quote }}
- "--set"
- {{ printf "storage=%s" (include "nlpjobs.storageRoot" .) | quote }}
- "--set"
- {{ printf "name=%s" (include "nlpjobs.runName" .) | quote }}
{{- range .Values.overrides }}
- "--set"
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
DeepSpeed overrides of the train stage (rendered only when deepspeed.enabled: else the job file decides).
*/}}
{{- define "nlpjobs.deepspeedArgs" -}}
{{- with .Values.deepspeed -}}
- "--set"
- "deepspeed.enabled=true"
- "--set"
- {{ printf "deepspeed.zero_stage=%d" (int .zeroStage) | quote }}
- "--set"
- {{ printf "deepspeed.offload_optimizer=%t" .offloadOptimizer | quote }}
- "--set"
- {{ printf "deepspeed.offload_params=%t" .offloadParams | quote }}
{{- end }}
{{- end }}

{{/*
Container command (rendered only when image.command is set; else the image's ENTRYPOINT runs).
*/}}
{{- define "nlpjobs.command" -}}
command:
  {{- toYaml .Values.image.command | nindent 2 }}
{{- end }}

{{/*
Environment shared by every container: storage, credentials from Secrets, writable cache locations.
*/}}
{{- define "nlpjobs.env" -}}
- name: NLPJOBS_CACHE
  value: /scratch/cache
- name: HF_HOME
  value: /scratch/hf
- name: TMPDIR
  value: /scratch/tmp
- name: HOME
  value: /scratch/home
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.storage.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.storage.region }}
- name: AWS_REGION
  value: {{ . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- if .Values.storage.secretName }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.secretName }}
      key: {{ .Values.storage.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.secretName }}
      key: {{ .Values.storage.secretAccessKeyKey }}
{{- end }}
{{- if .Values.hubToken.secretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.hubToken.secretName }}
      key: {{ .Values.hubToken.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Restricted-profile container securityContext.
*/}}
{{- define "nlpjobs.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Volume mounts of every container: /scratch (caches), /tmp (also /scratch/tmp = TMPDIR), /dev/shm (optional).
Usage: include "nlpjobs.volumeMounts" (list $ withShm)
*/}}
{{- define "nlpjobs.volumeMounts" -}}
{{- $root := index . 0 -}}
- name: scratch
  mountPath: /scratch
- name: tmp
  mountPath: /tmp
- name: tmp
  mountPath: /scratch/tmp
{{- if and (index . 1) $root.Values.shm.enabled }}
- name: shm
  mountPath: /dev/shm
{{- end }}
{{- end }}

{{/*
Pod volumes matching nlpjobs.volumeMounts.
Usage: include "nlpjobs.volumes" (list $ withShm)
*/}}
{{- define "nlpjobs.volumes" -}}
{{- $root := index . 0 -}}
- name: scratch
  emptyDir:
    {{- with $root.Values.scratch.sizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
- name: tmp
  emptyDir:
    {{- with $root.Values.scratch.tmpSizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
{{- if and (index . 1) $root.Values.shm.enabled }}
- name: shm
  emptyDir:
    medium: Memory
    {{- with $root.Values.shm.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
Container resources with the GPU limit merged in.
Usage: include "nlpjobs.resources" (list $ $resources $gpus)
*/}}
{{- define "nlpjobs.resources" -}}
{{- $root := index . 0 }}
{{- $res := deepCopy (index . 1) }}
{{- $gpus := int (index . 2) }}
{{- if and $root.Values.gpu.enabled (gt $gpus 0) }}
{{- $limits := default dict $res.limits }}
{{- $_ := set $limits $root.Values.gpu.resourceName $gpus }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- with $res }}
{{- toYaml . }}
{{- else -}}
{}
{{- end }}
{{- end }}

{{/*
Job-level fields shared by the stages: Kueue suspension, retries, failure policy, TTL, deadline.
Usage: include "nlpjobs.jobSpecCommon" (list $ $stageValues)
*/}}
{{- define "nlpjobs.jobSpecCommon" -}}
{{- $root := index . 0 }}
{{- $stage := index . 1 -}}
backoffLimit: {{ $root.Values.job.backoffLimit }}
{{- if $root.Values.kueue.queueName }}
suspend: true
{{- end }}
ttlSecondsAfterFinished: {{ $root.Values.job.ttlSecondsAfterFinished }}
{{- with $stage.activeDeadlineSeconds }}
activeDeadlineSeconds: {{ . }}
{{- end }}
{{- $pfp := $root.Values.job.podFailurePolicy }}
{{- $codes := list }}
{{- range $pfp.failJobOnExitCodes }}{{ $codes = append $codes (int .) }}{{ end }}
{{- if or $pfp.ignoreDisruptions $codes }}
podFailurePolicy:
  rules:
    {{- if $pfp.ignoreDisruptions }}
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
    {{- end }}
    {{- if $codes }}
    - action: FailJob
      onExitCodes:
        operator: In
        values:
          {{- /* the API wants them sorted and unique */}}
          {{- range $code := untilStep 1 256 1 }}
          {{- if has $code $codes }}
          - {{ $code }}
          {{- end }}
          {{- end }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
Job metadata labels: common labels, the stage, and the Kueue queue.
Usage: include "nlpjobs.jobLabels" (list $ "train")
*/}}
{{- define "nlpjobs.jobLabels" -}}
{{- $root := index . 0 }}
{{- include "nlpjobs.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- with $root.Values.kueue.queueName }}
kueue.x-k8s.io/queue-name: {{ . }}
{{- end }}
{{- end }}

{{/*
Pod metadata (labels and annotations) of a stage.
Usage: include "nlpjobs.podMetadata" (list $ "train")
*/}}
{{- define "nlpjobs.podMetadata" -}}
{{- $root := index . 0 -}}
labels:
  {{- include "nlpjobs.labels" $root | nindent 2 }}
  app.kubernetes.io/component: {{ index . 1 }}
  {{- with $root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $root.Values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Pod-level fields shared by the stages: restricted securityContext, no token, scheduling (the stage's own
values win over the top-level ones), pull secrets, grace period.
Usage: include "nlpjobs.podSpecCommon" (list $ $stageValues)
*/}}
{{- define "nlpjobs.podSpecCommon" -}}
{{- $root := index . 0 }}
{{- $stage := index . 1 -}}
restartPolicy: Never
terminationGracePeriodSeconds: {{ $root.Values.job.terminationGracePeriodSeconds }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
enableServiceLinks: false
{{- with $root.Values.serviceAccount.name }}
serviceAccountName: {{ . }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ $root.Values.securityContext.runAsUser }}
  runAsGroup: {{ $root.Values.securityContext.runAsGroup }}
  fsGroup: {{ $root.Values.securityContext.fsGroup }}
  seccompProfile:
    type: RuntimeDefault
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ kindIs "map" . | ternary (get (kindIs "map" . | ternary . dict) "name") . }}
  {{- end }}
{{- end }}
{{- with (default $root.Values.priorityClassName $stage.priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
{{- with (default $root.Values.nodeSelector $stage.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.tolerations $stage.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.affinity $stage.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Init container that waits (bounded) for the previous stage's _SUCCESS marker.
Usage: include "nlpjobs.waitContainer" (list $ "dataset" $timeoutSeconds)
*/}}
{{- define "nlpjobs.waitContainer" -}}
{{- $root := index . 0 -}}
- name: wait-for-{{ index . 1 }}
  image: {{ include "nlpjobs.image" $root | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  {{- if $root.Values.image.command }}
  {{- include "nlpjobs.command" $root | nindent 2 }}
  {{- end }}
  args:
    - "wait"
    - "--for"
    - {{ index . 1 | quote }}
    {{- include "nlpjobs.commonArgs" $root | nindent 4 }}
    - "--timeout"
    - {{ index . 2 | int | toString | quote }}
  env:
    {{- include "nlpjobs.env" $root | nindent 4 }}
  resources:
    {{- toYaml $root.Values.wait.resources | nindent 4 }}
  securityContext:
    {{- include "nlpjobs.containerSecurityContext" $root | nindent 4 }}
  volumeMounts:
    {{- include "nlpjobs.volumeMounts" (list $root false) | nindent 4 }}
{{- end }}
