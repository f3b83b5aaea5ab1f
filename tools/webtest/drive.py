"""Drive the diffuse web page: the model's preselected sampler, steps and guidance, then
dpmpp_2m; wait for the images, check each is not blank (the quick-start model once gave black
squares there), take a screenshot."""
import sys
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

url, shot = sys.argv[1], sys.argv[2]
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

    fill("seed", 7)
    fill("n", 8)
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
finally:
    driver.quit()
