"""Drive the diffuse web page: the model's preselected sampler, steps and guidance, then
dpmpp_2m; wait for the images, check each is not blank (the quick-start model once gave black
squares there). Then the editor: upload a generated image as a file, paint its right half with
the mouse, inpaint it as another class, and check that the results are not blank and that the
unpainted left part is kept; take a screenshot. A text-to-image model gets prompts instead of
classes (argv[3] and argv[4], default "red apple" and "blue heart")."""
import base64
import os
import sys
import tempfile
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

url, shot = sys.argv[1], sys.argv[2]
PROMPT = sys.argv[3] if len(sys.argv) > 3 else "red apple"
EDIT_PROMPT = sys.argv[4] if len(sys.argv) > 4 else "blue heart"
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--window-size=1000,760"]:
    opts.add_argument(a)

# Per image: mean and standard deviation of its grey levels (0..255), read back from a canvas.
PIXEL_STATS = """
return Array.from(document.querySelectorAll('#grid img')).map(img => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let s = 0, s2 = 0, n = 0;
  for (let i = 0; i < d.length; i += 4) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; s += v; s2 += v * v; n++; }
  const m = s / n; return [m, Math.sqrt(Math.max(s2 / n - m * m, 0))];
});
"""

# Per edit result: mean and std of its grey levels, and its mean absolute difference to the
# original over the left 35 % of columns (never painted) and the right 35 % (painted).
EDIT_STATS = """
const figs = [...document.querySelectorAll('#edit-grid img')];
const grey = (img) => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; const v = [];
  for (let i = 0; i < d.length; i += 4) v.push((d[i] + d[i + 1] + d[i + 2]) / 3);
  return [v, c.width];
};
const [orig, w] = grey(figs[0]);
return figs.slice(1).map(img => {
  const [v] = grey(img); let s = 0, s2 = 0, left = 0, nl = 0, right = 0, nr = 0;
  v.forEach((x, i) => {
    s += x; s2 += x * x;
    if (i % w < 0.35 * w) { left += Math.abs(x - orig[i]); nl++; }
    if (i % w >= 0.65 * w) { right += Math.abs(x - orig[i]); nr++; }
  });
  const m = s / v.length; return [m, Math.sqrt(Math.max(s2 / v.length - m * m, 0)), left / nl, right / nr];
});
"""


def edit(driver, wait, fill):
    """Upload the first generated image, paint its right half, inpaint it as class 8."""
    first = driver.find_element(By.CSS_SELECTOR, "#grid img").get_attribute("src")
    path = os.path.join(tempfile.mkdtemp(), "upload.png")
    with open(path, "wb") as f:
        f.write(base64.b64decode(first.split(",", 1)[1]))
    driver.find_element(By.ID, "edit-file").send_keys(path)
    wait.until(lambda d: d.find_element(By.ID, "edit-go").is_enabled())
    mask = driver.find_element(By.ID, "mask")
    w, h = mask.size["width"], mask.size["height"]
    for fx in (0.12, 0.22, 0.32, 0.42):  # offsets from the centre: the right half
        ActionChains(driver).move_to_element_with_offset(mask, int(fx * w), int(-0.45 * h)) \
            .click_and_hold().move_by_offset(0, int(0.9 * h)).release().perform()
    strength = driver.find_element(By.ID, "strength").get_attribute("value")
    assert strength == "1", f"painting a mask sets strength 1, not {strength}"
    if TEXT:
        fill("edit_prompt", EDIT_PROMPT)
    else:
        fill("edit_class", 8)
    fill("edit_n", 4)
    driver.find_element(By.ID, "edit-go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#edit-grid img")) == 5
               and d.execute_script("return [...document.querySelectorAll('#edit-grid img')].every(i => i.complete)"))
    status = driver.find_element(By.ID, "status").text
    assert "inpainting" in status, status
    stats = driver.execute_script(EDIT_STATS)
    for i, (m, s, left, right) in enumerate(stats):
        assert s > 20 and 5 < m < 250, f"edit {i} is blank (mean {m:.1f}, std {s:.1f})"
        assert left < 3, f"edit {i} changed the unpainted left part by {left:.1f} levels on average"
        print(f"ok edit {i}: grey mean/std {m:.0f}/{s:.0f}, left part changed by {left:.2f} levels, "
              f"painted right part by {right:.1f}")
    assert max(r for *_, r in stats) > 10, "no edit redrew the painted part"
    print(f"ok editor: {status}")


driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    driver.get(url)
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sampler option")) > 0)
    sampler = Select(driver.find_element(By.ID, "sampler"))
    offered = [o.get_attribute("value") for o in sampler.options]
    default = sampler.first_selected_option.get_attribute("value")
    steps = driver.find_element(By.ID, "steps").get_attribute("value")
    guidance = driver.find_element(By.ID, "guidance_scale").get_attribute("value")
    print(f"offered samplers: {offered}; preselected {default}, {steps} steps, guidance {guidance}")

    def fill(id_, value):
        el = driver.find_element(By.ID, id_)
        if el.is_enabled():
            el.clear()
            el.send_keys(str(value))

    def generate(label):
        driver.execute_script("document.getElementById('grid').innerHTML = ''")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid img")) == 8
                   and d.execute_script("return [...document.querySelectorAll('#grid img')].every(i => i.complete)"))
        status = driver.find_element(By.ID, "status").text
        assert "8 image(s)" in status, status
        bar = driver.find_element(By.ID, "bar")
        assert bar.get_attribute("value") == bar.get_attribute("max"), "progress bar not full"
        stats = driver.execute_script(PIXEL_STATS)
        for i, (m, s) in enumerate(stats):
            assert s > 20 and 5 < m < 250, f"{label}: image {i} is blank (mean {m:.1f}, std {s:.1f})"
        print(f"ok {label}: {status}; grey mean/std per image: "
              + ", ".join(f"{m:.0f}/{s:.0f}" for m, s in stats))

    TEXT = driver.find_element(By.ID, "prompt-box").is_displayed()
    fill("seed", 7)
    fill("n", 8)
    if TEXT:
        fill("prompt", PROMPT)
        print(f"text-to-image model: prompt {PROMPT!r}")
    else:
        fill("class_label", 3)
    generate(f"{default} (preselected)")
    if "dpmpp_2m" in offered and default != "dpmpp_2m":
        sampler.select_by_value("dpmpp_2m")
        fill("steps", 10)
        generate("dpmpp_2m, 10 steps")
        sampler.select_by_value(default)
        fill("steps", steps)
        generate(f"{default} again")
    driver.save_screenshot(shot)
    print(f"screenshot {shot}")
    edit(driver, wait, fill)
    driver.execute_script("document.querySelector('h2').scrollIntoView()")
    editor_shot = shot.replace("web-page", "web-editor")
    driver.save_screenshot(editor_shot)
    print(f"screenshot {editor_shot}")
finally:
    driver.quit()
