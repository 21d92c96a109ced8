--[[
Quarto's conditional-content and callout divs for plain pandoc (analysis/render.py).

* ::: {.content-visible when-format="html"} ... :::   kept only for that format;
  unless-format="..." the opposite; .content-hidden the reverse of .content-visible.
  Format names as in Quarto: "html" matches every HTML writer, "pdf" the LaTeX and Typst
  writers, any other name the writer of that name.
* ::: {.callout-note title="..."} ... :::   (also -warning, -important, -tip, -caution):
  a titled box; in HTML a <div class="callout callout-warning"> with a title paragraph, in
  Typst a shaded block with a coloured rule on the left.

Runs before the cross-reference filter and before --citeproc.
--]]

local COLOURS = {
  note = "#0b6fb3", tip = "#2a9d3a", important = "#c0392b", warning = "#e69d00",
  caution = "#d35400",
}

local function matches(name)
  if name == FORMAT then
    return true
  end
  if name == "html" then
    return FORMAT:match("^html") ~= nil or FORMAT == "revealjs" or FORMAT == "epub"
  end
  if name == "pdf" then
    return FORMAT == "latex" or FORMAT == "beamer" or FORMAT == "typst"
  end
  return false
end

local function any_matches(spec)
  for name in spec:gmatch("[^%s,]+") do
    if matches(name) then
      return true
    end
  end
  return false
end

local function visible(div)
  local when, unless = div.attributes["when-format"], div.attributes["unless-format"]
  local shown = true
  if when then
    shown = any_matches(when)
  elseif unless then
    shown = not any_matches(unless)
  end
  if div.classes:includes("content-hidden") then
    if when or unless then
      return not shown
    end
    return false
  end
  return shown
end

local function callout(div, kind)
  local title = div.attributes["title"]
  div.attributes["title"] = nil
  local blocks = pandoc.List()
  if title then
    blocks:insert(pandoc.Para({ pandoc.Strong(pandoc.Inlines(title)) }))
  end
  blocks:extend(div.content)
  if FORMAT == "typst" then
    local colour = COLOURS[kind] or COLOURS.note
    local out = pandoc.List({ pandoc.RawBlock("typst", string.format(
      '#block(width: 100%%, inset: 8pt, fill: rgb("%s").lighten(90%%), '
      .. 'stroke: (left: 3pt + rgb("%s")))[', colour, colour)) })
    out:extend(blocks)
    out:insert(pandoc.RawBlock("typst", "]"))
    -- the div keeps its classes and attributes for later filters (front-matter.lua); the
    -- Typst writer writes only its content
    return pandoc.Div(out, div.attr)
  end
  div.classes:insert(1, "callout")
  div.content = blocks
  return div
end

function Div(div)
  if div.classes:includes("content-visible") or div.classes:includes("content-hidden") then
    if visible(div) then
      return div.content
    end
    return {}
  end
  for _, class in ipairs(div.classes) do
    local kind = class:match("^callout%-(%w+)$")
    if kind then
      return callout(div, kind)
    end
  end
  return nil
end
