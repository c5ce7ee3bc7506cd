-- Argo CD health of a SlimServe CompressionJob (slimserve.io/v1alpha1).
--   Healthy:     the Succeeded condition is True for the current generation (the artifact is written).
--   Degraded:    Succeeded is False: the compression failed, or the spec is Invalid.
--   Progressing: no status yet, a status of an older generation, or the job is Pending or Running.
local hs = {}

local function condition(conditions, type_)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == type_ then return c end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then return fallback end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then text = text .. ": " end
    text = text .. c.message
  end
  if text == "" then return fallback end
  return text
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the CompressionJob"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "The operator has not yet acted on generation " .. generation
  return hs
end

local succeeded = condition(status.conditions, "Succeeded")
if succeeded ~= nil and succeeded.observedGeneration ~= nil and generation ~= nil
    and succeeded.observedGeneration < generation then
  succeeded = nil  -- a verdict about an older spec says nothing about this one
end

if succeeded ~= nil and succeeded.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(succeeded, "Compressed")
  return hs
end
if (succeeded ~= nil and succeeded.status == "False") or status.phase == "Failed" or status.phase == "Invalid" then
  hs.status = "Degraded"
  hs.message = describe(succeeded, "CompressionJob " .. (status.phase or "failed"))
  return hs
end

hs.status = "Progressing"
local phase = status.phase or "Pending"
local progress = status.progress
if progress ~= nil and progress.step ~= nil and progress.step ~= "" then
  hs.message = string.format("%s: %s (%d%%)", phase, progress.step, math.floor((progress.fraction or 0) * 100 + 0.5))
else
  hs.message = describe(succeeded, phase)
end
return hs
